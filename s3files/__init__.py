"""s3files: mount an S3 bucket (or a prefix of it) as a file system that plain-file code can use."""

__version__ = "0.1.0"
