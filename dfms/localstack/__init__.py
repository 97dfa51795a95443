"""dfms.localstack"""
