"""The experiment plan, computed from config alone (no torch, no data needed).

:mod:`vqshrink.plan.schedule` turns schedule lengths given in epochs into optimiser steps
(the stages and the budget use the same functions); :mod:`vqshrink.plan.budget` builds the
budget table ``results/plan/budget.csv`` and refuses, before any job, schedules that would
void an experiment on a dataset's real size.
"""
