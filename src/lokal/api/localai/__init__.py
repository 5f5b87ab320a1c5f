"""LocalAI's model-management API: galleries, install jobs, deletion."""

from __future__ import annotations

from lokal.api.family import Family, Mount
from lokal.api.localai import models, speech, tokenize

# Mounted before the OpenAI routes: its /models/... paths come before /models/{id}.
FAMILY = Family("localai", mounts=(Mount(models.router), Mount(speech.router), Mount(tokenize.router)))
