"""The FUSE front end: the ONLY package that imports pyfuse3."""
