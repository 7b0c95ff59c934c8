"""End-to-end checks (`make e2e`) and the real servers they and the slow tests start (`servers.py`)."""
