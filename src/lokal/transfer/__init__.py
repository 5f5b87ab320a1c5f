"""Getting files safely: confined outbound URLs (netguard), confined paths, and the
resumable, verified downloader. Below `models` and `install`, which both use it."""
