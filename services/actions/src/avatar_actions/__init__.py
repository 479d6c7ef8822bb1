"""The actions service. So far: its sequencing rules (``rules``)."""
