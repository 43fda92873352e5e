"""hlctl: from a Proxmox host with a GPU to a monitored, local-first LLM endpoint."""

__version__ = "0.1.0"
