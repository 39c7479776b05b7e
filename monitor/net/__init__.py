"""The probes' own network code: the HTTP/1.1 client (`http1`), TLS on the OpenSSL that
`cryptography` ships (`tls`), name lookups on a pool of their own (`resolver`) and the slots
that bound how many probes are in flight (`slots`). Only the kinds that probe load it."""
