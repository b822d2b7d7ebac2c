"""Offline preference training (DPO, IPO, RPO): pair data, losses, the reference cache, the loop."""
