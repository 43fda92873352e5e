"""Proxmox preflight and the ansible-playbook runner."""
