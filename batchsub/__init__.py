"""batchsub: submit job definitions to Huawei Cloud DLI in bulk, safely."""

__version__ = "0.1.0"
