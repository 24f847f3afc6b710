"""Which directories another user could redirect (``linx_otp/daemon/trust.py``): real
directories, links and owners, made here as root for another uid."""

from __future__ import annotations

import os

from support import needs_root

from linx_otp.daemon.trust import why_untrusted

NOBODY = 65534


def test_a_private_chain_of_directories_and_links_of_ours_is_trusted(tmp_path):
    (tmp_path / "real" / "deeper").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "relative").symlink_to("real/deeper")
    assert why_untrusted(str(tmp_path / "link" / "deeper")) is None
    assert why_untrusted(str(tmp_path / "relative")) is None
    assert why_untrusted(str(tmp_path / "real" / "deeper" / ".." / "deeper")) is None
    assert why_untrusted(str(tmp_path / "not-there-yet" / "nor-this")) is None  # nothing to redirect through


def test_a_directory_others_may_write_is_trusted_only_when_sticky(tmp_path):
    shared = tmp_path / "shared"
    (shared / "ours").mkdir(parents=True)
    shared.chmod(0o777)
    assert why_untrusted(str(shared / "ours")) == f"{shared} is writable by others (mode 0777)"
    shared.chmod(0o1777)  # as /tmp: only an entry's owner can rename or remove it
    assert why_untrusted(str(shared / "ours")) is None
    shared.chmod(0o770)
    assert why_untrusted(str(shared / "ours")) == f"{shared} is writable by others (mode 0770)"


@needs_root
def test_a_directory_or_a_link_of_another_user_on_the_way_is_named(tmp_path):
    theirs = tmp_path / "theirs"
    (theirs / "inside").mkdir(parents=True)
    os.chown(theirs, NOBODY, NOBODY)
    assert why_untrusted(str(theirs / "inside")) == f"{theirs} belongs to uid {NOBODY}"
    (tmp_path / "ours").mkdir()
    planted = tmp_path / "planted"
    planted.symlink_to(tmp_path / "ours")
    os.lchown(planted, NOBODY, NOBODY)
    assert why_untrusted(str(planted)) == f"{planted} is a symbolic link that belongs to uid {NOBODY}"
    chained = tmp_path / "chained"
    chained.symlink_to(planted)  # ours, but it leads through theirs
    assert why_untrusted(str(chained)) == f"{planted} is a symbolic link that belongs to uid {NOBODY}"


def test_a_file_on_the_way_and_a_loop_of_links_are_refused(tmp_path):
    (tmp_path / "file").write_text("")
    assert why_untrusted(str(tmp_path / "file" / "below")) == f"{tmp_path / 'file'} is not a directory"
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert "more than 40 symbolic links" in why_untrusted(str(tmp_path / "loop"))
