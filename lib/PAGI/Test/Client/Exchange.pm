package PAGI::Test::Client::Exchange;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp qw(croak);
use Future;

our @CARP_NOT = qw(PAGI::Test::Client);

# What the HTTP, WebSocket and SSE exchanges of PAGI::Test::Client share:
# how an event the app sent is refused, how the app's own events reach it,
# and how the test is told. Internal; see PAGI::Test::Client.

sub _croak { croak "PAGI::Test::Client: $_[0]{what}: $_[1]" }

sub _croak_problem { $_[0]->_croak($_[0]{problem}) if defined $_[0]{problem} }

sub _croak_app_error {
    my ($self) = @_;
    return unless defined $self->{app_error} && $self->{client}{raise_app_errors};
    $self->_croak("the app died: $self->{app_error}");
}

# The first thing wrong with the shape of an event the app sent: not a
# hash, no type, or a type that $protocol's handler table does not know.
sub _event_problem {
    my ($self, $event, $handlers, $protocol) = @_;
    return 'send: the event must be a hash reference' if ref $event ne 'HASH';
    return "send: the event has no 'type' field" unless defined $event->{type};
    return "Unrecognized event type '$event->{type}' for $protocol protocol" unless $handlers->{ $event->{type} };
    return undef;
}

# The $send Future for an event: done, or failed with $problem. The first
# problem is what the test croaks with, even when the app catches the failure.
sub _answer {
    my ($self, $problem) = @_;
    return Future->done unless defined $problem;
    $self->{problem} //= $problem;
    return Future->fail("$problem\n", 'pagi');
}

# The app's next event: queued first, then $ended once the exchange is over
# (undef while it is not), else a Future the client completes later.
sub _next_inbound {
    my ($self, $ended) = @_;
    return Future->done(shift @{ $self->{inbox} }) if @{ $self->{inbox} };
    return Future->done($ended) if $ended;
    return $self->{receive_f} //= $self->{client}->loop->new_future;
}

1;
