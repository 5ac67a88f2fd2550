package PAGI::Server::HTTP;
use strict;
use warnings;

our $VERSION = '0.01';

use Future;
use Scalar::Util qw(blessed);

=head1 NAME

PAGI::Server::HTTP - one http scope: PAGI events to engine commands

=head1 DESCRIPTION

Internal to L<PAGI::Server>. An object per request holds its state; the
C<$receive> and C<$send> closures given to the app call L</receive> and
L</send>. This is the only place where PAGI http event hashes become engine
commands, and where their order and fields are checked: a bad event fails
its C<$send> Future with a message naming the problem, and nothing reaches
the wire.

Response states: 0 nothing sent, 1 started, 2 complete.

=cut

# One shared, already-done Future for every $send that need not wait.
my $DONE = Future->done;
my $DISCONNECT = { type => 'http.disconnect' };

sub new {
    my ($class, $server, $id, $scope, $body) = @_;
    return bless {
        server => $server,
        engine => $server->{engine},
        id     => $id,
        scope  => $scope,
        body   => $body,      # the whole body when the engine sent it along
        state  => 0,
    }, $class;
}

sub _fail {
    my ($message) = @_;
    return Future->fail("$message\n", 'pagi');
}

# Engine croaks name their method; the app wants the event's problem.
sub _engine_error {
    my ($event_type, $error) = @_;
    $error =~ s/\APAGI::Server::Native::\w+: //;
    $error =~ s/ at \S+ line \d+\.?\n\z//;
    chomp $error;
    return _fail("$event_type: $error");
}

=head1 METHODS

=head2 receive

Returns a Future of the next inbound event: C<http.request> chunks, then
C<http.disconnect> once the response is complete or the client is gone.

=cut

sub receive {
    my ($self) = @_;
    if (defined(my $body = delete $self->{body})) {
        $self->{body_done} = 1;
        return Future->done({ type => 'http.request', body => $body, more => 0 });
    }
    return Future->done({%$DISCONNECT}) if $self->{gone} || ($self->{body_done} && $self->{complete});
    return $self->{receive_f} if $self->{receive_f};
    my $f = $self->{receive_f} = Future->new;
    unless ($self->{body_done}) {
        $self->{engine}->want_body($self->{id});
        $self->{server}->_flush_soon;
    }
    return $f;
}

=head2 send

Takes one PAGI send event; returns a Future done when the event was
accepted, pending while the response buffer is above the high watermark.

=cut

sub send {
    my ($self, $event) = @_;
    return _fail('send: event must be a hash reference') unless ref $event eq 'HASH';
    my $type = $event->{type};
    return _fail("send: event has no 'type' field") unless defined $type;
    if ($type eq 'http.response.body') {
        return $self->_body($event);
    }
    elsif ($type eq 'http.response.start') {
        return $self->_start($event);
    }
    elsif ($type eq 'http.response.trailers') {
        return $self->_trailers($event);
    }
    return _fail("Unrecognized event type '$type' for http protocol");
}

sub _start {
    my ($self, $event) = @_;
    my $status = $event->{status};
    return _fail("http.response.start: 'status' is required") unless defined $status;
    return _fail("http.response.start: 'status' must be an integer from 100 to 999, got '$status'")
        unless !ref $status && $status =~ /\A[1-9][0-9][0-9]\z/;
    my $headers = $event->{headers};
    return _fail("http.response.start: 'headers' must be an array reference")
        if defined $headers && ref $headers ne 'ARRAY';
    return $DONE if $self->{gone};
    return _fail('http.response.start: the response was already started') if $self->{state};
    my $trailers = $event->{trailers} ? 1 : 0;
    my $ok = eval { $self->{engine}->http_start($self->{id}, $status, $headers // [], $trailers); 1 };
    return _engine_error('http.response.start', $@) unless $ok;
    $self->{state}    = 1;
    $self->{status}   = $status;
    $self->{trailers} = $trailers;
    return $DONE;
}

sub _body {
    my ($self, $event) = @_;
    return _fail("http.response.body: 'file' and 'fh' bodies are not supported yet")
        if defined $event->{file} || defined $event->{fh};
    my $body = $event->{body};
    return _fail("http.response.body: 'body' must be a byte string")
        if ref $body;
    return $DONE if $self->{gone};
    return _fail('http.response.body: sent before http.response.start') unless $self->{state};
    return _fail('http.response.body: the response is already complete') if $self->{state} == 2 || $self->{body_ended};
    my $more = $event->{more} ? 1 : 0;
    my $engine = $self->{engine};
    my $buffered = eval { $engine->http_body($self->{id}, $body // '', $more) };
    return _engine_error('http.response.body', $@) unless defined $buffered;
    $self->{bytes_sent} += length($body // '');
    unless ($more) {
        if   ($self->{trailers}) { $self->{body_ended} = 1 }
        else                     { $self->{state} = 2 }
    }
    $self->{server}->_flush_soon;
    if ($buffered >= $self->{server}{high_watermark} && $engine->wait_writable($self->{id})) {
        return $self->{drain_f} //= Future->new;
    }
    return $DONE;
}

sub _trailers {
    my ($self, $event) = @_;
    my $headers = $event->{headers};
    return _fail("http.response.trailers: 'headers' must be an array reference")
        if defined $headers && ref $headers ne 'ARRAY';
    return $DONE if $self->{gone};
    return _fail('http.response.trailers: http.response.start did not declare trailers => 1')
        unless $self->{state} && $self->{trailers};
    return _fail('http.response.trailers: the response is already complete') if $self->{state} == 2;
    return _fail('http.response.trailers: send the final http.response.body (more => 0) first')
        unless $self->{body_ended};
    my $ok = eval { $self->{engine}->http_trailers($self->{id}, $headers // []); 1 };
    return _engine_error('http.response.trailers', $@) unless $ok;
    $self->{state} = 2;
    $self->{server}->_flush_soon;
    return $DONE;
}

=head2 app_finished

Called with the app's Future once it is ready: applies the server's part of
the completion contract (PAGI-SPEC 1.4): 500 when nothing was sent, closing
the connection when a response was cut short.

=cut

sub app_finished {
    my ($self, $f) = @_;
    my $server = $self->{server};
    if (blessed $f && ($f->is_failed || $f->is_cancelled)) {
        my $error = $f->is_failed ? ($f->failure)[0] : 'app future was cancelled';
        $error =~ s/\s+\z//;
        $server->_log(error => "app error on $self->{scope}{method} $self->{scope}{path}: $error");
        $self->_abort_response;
        return;
    }
    return if $self->{gone} || $self->{state} == 2;
    if ($self->{state} == 0) {
        $server->_log(error => "app returned without sending a response for $self->{scope}{method} $self->{scope}{path}");
    }
    $self->_abort_response;
}

sub _abort_response {
    my ($self) = @_;
    return if $self->{gone};
    my $engine = $self->{engine};
    if ($self->{state} == 0) {
        $self->{status} = 500;
        $engine->respond_full($self->{id}, 500, [ [ 'content-type', 'text/plain' ] ], "Internal Server Error\n");
        $self->{state} = 2;
    }
    $engine->abort($self->{id});
    $self->{server}->_flush_soon;
}

# Engine events for this request.

sub on_body {
    my ($self, $bytes, $more) = @_;
    $self->{body_done} = 1 unless $more;
    my $f = delete $self->{receive_f} or return;
    $f->done({ type => 'http.request', body => $bytes, more => $more });
}

sub on_writable {
    my ($self) = @_;
    my $f = delete $self->{drain_f} or return;
    $f->done;
}

sub on_done {
    my ($self) = @_;
    $self->{complete} = 1;
    # The request is over: nothing else will answer a pending $receive.
    if (my $f = delete $self->{receive_f}) {
        $f->done({%$DISCONNECT});
    }
    $self->on_writable;
}

sub on_disconnect {
    my ($self, $reason) = @_;
    $self->{gone} = $reason;
    if (my $f = delete $self->{receive_f}) {
        $f->done({%$DISCONNECT});
    }
    $self->on_writable;
}

1;
