//! Orders services so each starts after the ones it depends on.

use std::collections::BTreeSet;

use crate::ComposeError;
use crate::model::Service;

/// Orders services so each comes after its dependencies (stable: file order otherwise).
pub(crate) fn order_services(services: Vec<Service>) -> Result<Vec<Service>, ComposeError> {
    let names: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for s in &services {
        for d in &s.depends_on {
            if !names.contains(d.service.as_str()) && d.required {
                return Err(ComposeError::ResolveDependency {
                    service: s.name.clone(),
                    dependency: d.service.clone(),
                });
            }
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    fn visit(
        i: usize,
        services: &[Service],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), ComposeError> {
        match marks[i] {
            Mark::Done => return Ok(()),
            Mark::Visiting => {
                let start = stack.iter().position(|&j| j == i).unwrap_or(0);
                let mut cycle: Vec<String> = stack[start..]
                    .iter()
                    .map(|&j| services[j].name.clone())
                    .collect();
                cycle.push(services[i].name.clone());
                return Err(ComposeError::OrderServices { cycle });
            }
            Mark::New => {}
        }
        marks[i] = Mark::Visiting;
        stack.push(i);
        for d in &services[i].depends_on {
            if let Some(j) = services.iter().position(|s| s.name == d.service) {
                visit(j, services, marks, stack, order)?;
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        order.push(i);
        Ok(())
    }
    let mut marks = vec![Mark::New; services.len()];
    let mut order = Vec::with_capacity(services.len());
    let mut stack = Vec::new();
    for i in 0..services.len() {
        visit(i, &services, &mut marks, &mut stack, &mut order)?;
    }
    let mut slots: Vec<Option<Service>> = services.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}
