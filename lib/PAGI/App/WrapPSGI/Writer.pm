package PAGI::App::WrapPSGI::Writer;
use strict;
use warnings;

our $VERSION = '0.01';

use Future;

=head1 NAME

PAGI::App::WrapPSGI::Writer - the PSGI streaming writer over PAGI $send

=head1 SYNOPSIS

    # inside a PSGI app run by PAGI::App::WrapPSGI
    return sub {
        my ($responder) = @_;
        my $writer = $responder->([ 200, [ 'Content-Type' => 'text/plain' ] ]);
        $writer->write("first\n");          # on the wire now
        $loop->delay_future(after => 1)->on_done(sub {
            $writer->write("second\n");
            $writer->close;                  # ends the response
        });
    };

=head1 DESCRIPTION

What C<< $responder->([$status, \@headers]) >> returns in
L<PAGI::App::WrapPSGI>. Built on the C<$send> of one PAGI request, whose
events it sends one at a time, each after the previous one was accepted
(PAGI apps await every C<$send>):

=over 4

=item write($bytes)

Sends C<$bytes> as a body event with C<< more => 1 >> at once. While an
earlier event waits (backpressure: the client reads slower than the app
writes), chunks are joined and go out as one event when it is accepted.
Empty and undefined chunks are skipped; writes after C<close> are ignored.

=item close

Sends the final body event (C<< more => 0 >>) once everything written went
out; the request is then complete. A writer destroyed without C<close> is
closed then.

=item poll_cb($cb)

Calls C<< $cb->($writer) >> at once and again each time what it wrote has
been accepted, until it closes the writer; a call that writes nothing ends
the polling (a later C<poll_cb> starts it again). This is how a PSGI app
streams a large body with backpressure.

=back

If a C<$send> fails (a chunk with wide characters, say), the rest is
dropped and the request's Future fails with that error, so the server logs
it and cuts the connection.

=head2 new

    PAGI::App::WrapPSGI::Writer->new(send => $send, body_type => 'http.response.body',
        start => $start_future, done => $done_future);

C<start> is the Future of the C<http.response.start> already sent; C<done>
is resolved when the response is complete (or failed with the error).

=head2 discarding

A writer whose writes go nowhere, for a responder call that was refused.

=cut

sub new {
    my ($class, %args) = @_;
    my $self = bless {
        send      => $args{send},
        body_type => $args{body_type},
        done      => $args{done},
        pending   => '',
    }, $class;
    $self->_wait($args{start}) if $args{start};
    return $self;
}

sub discarding {
    my ($class) = @_;
    return bless { discard => 1, pending => '', closed => 1 }, $class;
}

sub write {
    my ($self, $bytes) = @_;
    return if $self->{closed} || $self->{failed};
    return 1 unless defined $bytes && length $bytes;
    $self->{wrote_in_poll} = 1;
    if ($self->{busy}) {
        $self->{pending} .= $bytes;
        return 1;
    }
    $self->_send($bytes, 1);
    return 1;
}

sub close {
    my ($self) = @_;
    return if $self->{closed};
    $self->{closed} = 1;
    delete $self->{poll};
    $self->_next unless $self->{busy};
    return;
}

sub poll_cb {
    my ($self, $cb) = @_;
    return if $self->{closed} || $self->{failed};
    $self->{poll} = $cb;
    $self->_poll unless $self->{busy};
    return;
}

sub _send {
    my ($self, $bytes, $more) = @_;
    my $f = eval { $self->{send}->({ type => $self->{body_type}, body => $bytes, more => $more }) }
        // Future->fail($@ || "send returned nothing\n");
    $self->{final_sent} = 1 unless $more;
    $self->_wait($f);
}

# One event in flight at a time; what comes next is decided when it is accepted.
sub _wait {
    my ($self, $f) = @_;
    return $self->_accepted($f) if $f->is_ready;
    $self->{busy} = $f;
    $f->on_ready(sub {
        delete $self->{busy};
        $self->_accepted($_[0]);
    });
}

sub _accepted {
    my ($self, $f) = @_;
    if ($f->is_failed || $f->is_cancelled) {
        $self->{failed} = 1;
        $self->{pending} = '';
        delete $self->{poll};
        my $done = $self->{done};
        $done->fail($f->is_failed ? $f->failure : "PSGI writer: send was cancelled\n") unless $done->is_ready;
        return;
    }
    if ($self->{final_sent}) {
        $self->{done}->done unless $self->{done}->is_ready;
        return;
    }
    $self->_next;
}

sub _next {
    my ($self) = @_;
    if (length $self->{pending}) {
        my $bytes = $self->{pending};
        $self->{pending} = '';
        return $self->_send($bytes, 1);
    }
    return $self->_send('', 0) if $self->{closed};
    $self->_poll if $self->{poll};
}

# Calls the poll callback while what it writes is accepted at once; when a
# write has to wait, the callback runs again from _accepted.
sub _poll {
    my ($self) = @_;
    return if $self->{polling};    # a write inside the callback comes back here
    local $self->{polling} = 1;
    while (my $cb = $self->{poll}) {
        $self->{wrote_in_poll} = 0;
        my $ok = eval { $cb->($self); 1 };
        unless ($ok) {
            my $error = $@;
            delete $self->{poll};
            $self->{failed} = 1;
            $self->{done}->fail("PSGI poll_cb died: $error") unless $self->{done}->is_ready;
            return;
        }
        last if $self->{busy} || $self->{closed} || $self->{failed};
        unless ($self->{wrote_in_poll}) {
            delete $self->{poll};
            last;
        }
    }
}

# Dropped without close: what is pending and the end go out in one event.
# Nothing is in flight (an event in flight holds the writer), and the
# callback holds only the done Future, not the dying writer.
sub DESTROY {
    my ($self) = @_;
    return if ${^GLOBAL_PHASE} eq 'DESTRUCT' || $self->{discard} || $self->{closed} || $self->{failed};
    my $done = $self->{done};
    my $f = eval { $self->{send}->({ type => $self->{body_type}, body => $self->{pending}, more => 0 }) }
        // Future->fail($@ || "send returned nothing\n");
    $f->on_ready(sub {
        my ($sent) = @_;
        return if $done->is_ready;
        $sent->is_failed ? $done->fail($sent->failure) : $done->done;
    });
}

1;
