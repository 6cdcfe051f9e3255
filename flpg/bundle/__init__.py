"""An app as code that travels: reading and bundling an app directory, checking its
components, caching bundles on a worker's disk, and the processes that run them."""
