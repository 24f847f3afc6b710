"""Tree files shipped with linx_otp: ``demo.toml`` is what ``linx-otp run`` runs by default."""
