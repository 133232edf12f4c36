"""The router's seams (`router.base`) stored: in one process's memory (`memory*`, the embedded
default of `zuulpush serve`) and on Redis or Redis Cluster (`redis_*`)."""
