"""BitTorrent announce aggregator: a tracker for local clients that also harvests upstream peers."""

__version__ = "0.1.0"
