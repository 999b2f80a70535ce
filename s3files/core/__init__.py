"""The file system core: no pyfuse3, no botocore."""
