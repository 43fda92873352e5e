"""Day-2 operations across the inventory, and local status."""
