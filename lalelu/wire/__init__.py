"""The wire between edge and backend: the protocol both ends speak (`protocol`), the edge's end of it
(`link`); the backend's end is its server (`lalelu.backend.server`)."""
