"""Getting models: references, galleries, confined downloads and install jobs.

Modules (import them directly; this package imports nothing on purpose, so that
`lokal.models.download` can use the downloader without an import cycle):

* `netguard`: the outbound-URL policy (SSRF rules, #21);
* `paths`: file and model names confined to the models folder;
* `downloader`: resumable, verified, shared downloads;
* `references`: what a user may name (gallery entries, hf://, URLs, config URLs);
* `gallery`: LocalAI-format galleries, the built-in one included;
* `manager`: the job system (`InstallManager.start()` -> `Job`, in `jobs`; planning in
  `planning`, conflict and disk checks in `conflicts`, commits and install records in
  `records`, deletion in `removal`), used by the CLI,
  LocalAI's `/models/apply` and, later, the web UI and Ollama's `/api/pull`.
"""
