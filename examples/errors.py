"""Errors: asynchronous pre-exec failures arrive as events; bad options raise at once.

python examples/errors.py
"""

import linx_otp
from linx_otp import process as P

child = P.spawn(argv=["/this/does/not/exist"])
linx_otp.receive(("linx_process", "ready"), timeout=5)
P.proceed(child)
print(linx_otp.receive(timeout=5))  # ('linx_process', 'error', 2, 'execve')
child.stop()

for options in ({"argv": []}, {"argv": ["/bin/true"], "namespaces": ["typo"]}):
    try:
        P.spawn(**options)
    except linx_otp.LinxError as error:
        print(repr(error.reason), "-", error)  # 'argv_required', ('bad_namespaces', ['typo'])
