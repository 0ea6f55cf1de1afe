"""The notebook layer: the runner (`runs`), the three ablations (`ablations`), figures (`plots`) and the
papermill workbook (`workbook`). It imports the core library; nothing in the core imports it."""
