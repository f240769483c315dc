"""The ``ccc`` and ``ccc-statusd`` commands: thin mappers from arguments to calls."""
