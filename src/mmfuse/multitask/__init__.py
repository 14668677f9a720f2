"""Multi-task models (`task: multitask`): several registered tasks (mmfuse.tasks) trained together
over one table and one set of encoders, with hard, soft or hierarchical sharing and fixed,
uncertainty, GradNorm or PCGrad loss weighting. docs/multitask.md."""
