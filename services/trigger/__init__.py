"""Trigger service: retraining decisions, the KFP training pipeline and its steps."""
