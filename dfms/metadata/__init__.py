"""dfms.metadata"""
