"""Model files on disk and on demand: model folders, the catalogue, the downloader, hashes."""
