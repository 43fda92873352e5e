"""The llama-server + router stack on a GPU host: .env rendering, compose interpolation,
CUDA compatibility and offload checks (pure), and the docker compose / docker SDK edges."""
