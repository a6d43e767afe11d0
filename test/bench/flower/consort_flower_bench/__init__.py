"""Flower app of Consort's orchestration-overhead benchmark."""
