"""lalelu edge: capture, send to the backend (or infer locally), hand poses to a consumer."""
