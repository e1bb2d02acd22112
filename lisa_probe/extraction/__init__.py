"""Feature extraction into HDF5 stores: settings (``config``) and the extractor (``extractor``)."""
