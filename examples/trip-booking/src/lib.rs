//! Trip booking: flight, hotel and car, each an immediate action with its
//! cancellation. If one booking fails, the ones already made are cancelled,
//! newest first, and nothing else happens; if all succeed, the itinerary is
//! emailed (a deferred intent, sent only because the run succeeded).
//!
//! Input: `{"traveller": "ada", "fail_at": "car"}`; both keys are optional.

use escrow_guest::{Error, defer, saga};
use serde::{Deserialize, Serialize};

/// What to book.
#[derive(Debug, Deserialize)]
pub struct Trip {
    /// Who travels.
    #[serde(default = "default_traveller")]
    pub traveller: String,
    /// The leg whose booking should fail (`flight`, `hotel` or `car`).
    #[serde(default)]
    pub fail_at: Option<String>,
}

fn default_traveller() -> String {
    "ada".into()
}

/// One leg's request; its cancellation gets the same payload.
#[derive(Debug, Serialize)]
struct Leg<'a> {
    leg: &'a str,
    traveller: &'a str,
    /// Asks the booking handler to fail, to show the saga undoing.
    fail: bool,
}

/// What a booking handler answers.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Booking {
    /// The provider's confirmation code.
    pub confirmation: String,
}

/// The confirmation email, sent once the whole trip is booked.
#[derive(Debug, Serialize)]
struct Confirmation<'a> {
    to: &'a str,
    itinerary: &'a Itinerary,
}

/// The booked trip.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Itinerary {
    /// The flight's booking.
    pub flight: Booking,
    /// The hotel's booking.
    pub hotel: Booking,
    /// The car's booking.
    pub car: Booking,
}

/// Books the three legs as one saga, then defers the confirmation email.
#[escrow_guest::plugin]
pub fn book(trip: Trip) -> Result<Itinerary, String> {
    let leg = |leg| Leg {
        leg,
        traveller: &trip.traveller,
        fail: trip.fail_at.as_deref() == Some(leg),
    };
    let itinerary = saga(|s| {
        let flight = s.step("flight.book", &leg("flight"), "flight.cancel")?;
        let hotel = s.step("hotel.book", &leg("hotel"), "hotel.cancel")?;
        let car = s.step("car.book", &leg("car"), "car.cancel")?;
        Ok::<_, Error>(Itinerary { flight, hotel, car })
    })
    .map_err(|e| format!("the trip could not be booked: {e}"))?;
    let email = Confirmation {
        to: &trip.traveller,
        itinerary: &itinerary,
    };
    defer("email.send", &email).map_err(|e| e.to_string())?;
    Ok(itinerary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use escrow_guest::testing::Sandbox;

    fn providers() -> Sandbox {
        let mut sandbox = Sandbox::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/escrow.toml"));
        for leg in ["flight", "hotel", "car"] {
            sandbox = sandbox
                .action(format!("{leg}.book"), move |payload: &[u8]| {
                    if String::from_utf8_lossy(payload).contains("\"fail\":true") {
                        return Err(format!("no {leg} available"));
                    }
                    Ok(format!(r#"{{"confirmation": "{leg}-1"}}"#).into_bytes())
                })
                .action(format!("{leg}.cancel"), |_: &[u8]| Ok(Vec::new()));
        }
        sandbox
    }

    #[test]
    fn a_full_trip_books_three_legs_and_defers_the_email() {
        let recording = providers().run(|| {
            book(Trip {
                traveller: "ada".into(),
                fail_at: None,
            })
        });
        assert_eq!(recording.output.as_ref().unwrap().car.confirmation, "car-1");
        assert_eq!(recording.committed_effects(), ["email.send"]);
        assert!(recording.compensations.is_empty());
    }

    #[test]
    fn a_failed_car_cancels_hotel_then_flight() {
        let trip = Trip {
            traveller: "ada".into(),
            fail_at: Some("car".into()),
        };
        let recording = providers().run(|| book(trip));
        assert!(
            recording
                .output
                .as_ref()
                .unwrap_err()
                .contains("no car available")
        );
        let undone: Vec<&str> = recording
            .compensations
            .iter()
            .map(|c| c.effect.as_str())
            .collect();
        assert_eq!(undone, ["car.cancel", "hotel.cancel", "flight.cancel"]);
        assert!(recording.committed_effects().is_empty());
    }
}
