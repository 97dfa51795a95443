"""dfms.events"""
