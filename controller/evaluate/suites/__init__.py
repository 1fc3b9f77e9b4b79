"""The evaluation suites, one module each, all of one shape (controller.evaluate.suite.Suite):
`run(examples, generate) -> Section`. Adding a metric means adding a suite here and planning it
in controller.evaluate.run."""
from controller.evaluate.suites.bias import BiasSuite
from controller.evaluate.suites.compare import CompareSuite
from controller.evaluate.suites.contamination import ContaminationSuite
from controller.evaluate.suites.format import FormatSuite
from controller.evaluate.suites.rag import RagSuite
from controller.evaluate.suites.regression import RegressionSuite
from controller.evaluate.suites.task import TaskSuite

__all__ = ["BiasSuite", "CompareSuite", "ContaminationSuite", "FormatSuite", "RagSuite", "RegressionSuite", "TaskSuite"]
