"""imagefactory: guest-image factory for Linux-VServer style hosting."""

__version__ = "0.1.0"
