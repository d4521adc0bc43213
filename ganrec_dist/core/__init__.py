"""What every stage uses: user errors, logging, the configuration dataclasses, local/S3 storage
and the connection to Ray. Imports nothing else of the package."""
