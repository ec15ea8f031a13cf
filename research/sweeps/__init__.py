"""Sweeps and scaling laws. scaling.py: fits of L(N, D) to finished runs (Chinchilla's approaches 2
and 3) with bootstrap intervals. (Optuna studies, trial tables and plots come next.)"""
