"""LocalAI's model-management API: galleries, install jobs, deletion."""
