"""Developer tooling: the local stack that stands in for AWS, and the dev PKI."""
