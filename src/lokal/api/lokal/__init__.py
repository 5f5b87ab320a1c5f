"""lokal's own small API: what the web UI needs beyond the OpenAI and LocalAI routes."""
