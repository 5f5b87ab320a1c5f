"""lokal across machines: the same server as a Ray Serve application (`lokal serve --ray`).

The cut is the registry's lease (see docs/scale-out.md):

* `lokal.scale.cluster` (models layer): the model replicas, each holding a real
  `ModelRegistry` (catalog + pool with its usual rules) on its node, and the
  ingress-side `RayRegistry`, whose leases proxy the `Engine` calls (chat and
  completion chunks streamed, embed, rerank, transcribe) to a replica chosen by
  Ray Serve's model multiplexing. Errors cross as lokal's own kinds.
* `lokal.scale.app` (cli layer): the Serve application (ingress = lokal's own
  FastAPI app over a `RayRegistry`, the model replicas, a small board where the
  replicas post their state), `lokal serve --ray` and `lokal models list --ray`.

Ray is an optional extra (`pip install 'lokal[ray]'`); nothing here is imported
unless `--ray` is given.
"""
