"""Event channels: port state (``evtchn.py``) and the 2-level delivery ABI (``evtchn_2l.py``)."""
