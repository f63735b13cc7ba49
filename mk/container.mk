# Container image: `make test-container` builds it with buildah (chroot isolation, no Docker
# engine) and runs a receiver and a sender from it on loopback. Needs root; not part of
# `make test`. See docs/deployment.md.
.PHONY: test-container
test-container:
	bash tests/container/test_container.sh
