"""mlcluster: stand up, watch, load-test and tear down a transformer inference cluster."""
__version__ = "0.1.0"
