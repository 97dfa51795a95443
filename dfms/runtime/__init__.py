"""dfms.runtime"""
