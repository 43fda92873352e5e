"""GPU readings (NVML), health evaluation, alerts and exporters."""
