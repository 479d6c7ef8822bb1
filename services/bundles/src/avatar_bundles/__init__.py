"""The bundle service: avatar runtime bundles, from ZeroWeight or a folder, cached."""
