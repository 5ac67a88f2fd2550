package PAGI::Test::Client::WebSocket;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp qw(croak);
use Future;
use Scalar::Util ();
use Scalar::Util qw(looks_like_number);
use PAGI::Test::Client::Check;
use PAGI::Test::Client::JSON;
use PAGI::Test::Client::Response;

use parent -norequire, 'PAGI::Test::Client::Exchange';
use PAGI::Test::Client::Exchange ();

our @CARP_NOT = qw(PAGI::Test::Client);

=head1 NAME

PAGI::Test::Client::WebSocket - a WebSocket session with an app, in process

=head1 SYNOPSIS

    my $ws = $client->websocket('/echo', subprotocols => ['chat']);
    ok $ws->accepted;
    $ws->send_text('hello');
    is $ws->receive, 'echo: hello';
    $ws->send_json({ n => 1 });
    is_deeply $ws->receive_json, { n => 1 };
    $ws->close(1000, 'bye');

    my $denied = $client->websocket('/private');
    is $denied->status, 403;          # or the denial response's status

=head1 DESCRIPTION

Made by C<< PAGI::Test::Client->websocket >>, which delivers
C<websocket.connect> and returns once the app answered the handshake. The
app's events are checked as PAGI::Server checks them (a bad one croaks,
naming the field); after the app closed, further sends are no-ops, as on
a server. A session the app did not accept is returned too, with
C<accepted> false and the HTTP C<status> a client would have seen: the
denial response's (C<websocket.http.response.*>), 403 for
C<websocket.close> before accept or a clean return, 500 when the app died
(with C<< raise_app_errors => 1 >>, the default, that croaks instead).

=head1 METHODS

=cut

my %SEND = (
    'websocket.accept'              => '_accept',
    'websocket.send'                => '_message',
    'websocket.close'               => '_app_close',
    'websocket.keepalive'           => '_keepalive',
    'websocket.http.response.start' => '_deny_start',
    'websocket.http.response.body'  => '_deny_body',
);

# state: 0 handshake, 1 open, 2 closed, 3 denial response in progress, 4 denied.
sub new {
    my ($class, %args) = @_;
    return bless { %args, state => 0, inbox => [ { type => 'websocket.connect' } ], outbox => [] }, $class;
}

sub connect {
    my ($self) = @_;
    my $client = $self->{client};
    # Weak: a session the test dropped must not be kept alive by the app's
    # callbacks (nor keep the client, and its lifespan shutdown, alive).
    Scalar::Util::weaken(my $weak = $self);
    $self->{app_f} = $client->_call_app($self->{scope},
        sub { $weak ? $weak->_receive : Future->done({ type => 'websocket.disconnect', code => 1006, reason => 'client_closed' }) },
        sub { $weak ? $weak->_send(@_) : Future->done });
    $self->{app_f}->on_ready(sub { $weak->_app_finished if $weak });
    my $answered = $client->_wait(sub { $self->{state} != 0 && $self->{state} != 3 }, $self->{timeout});
    $self->_croak_problem;
    $self->_croak("the app did not answer the handshake (websocket.accept, websocket.close or a denial) "
        . "within $self->{timeout}s") unless $answered;
    $self->_croak_app_error if !$self->{accepted};
    return $self;
}

sub _app_finished {
    my ($self) = @_;
    my $f = $self->{app_f};
    if ($f->is_failed) {
        $self->{app_error} = ($f->failure)[0] =~ s/\s+\z//r;
    }
    if ($self->{state} == 0) {
        # As PAGI::Server: 500 when the app died, else 403.
        $self->_denied(defined $self->{app_error} ? 500 : 403, [], '');
    }
    elsif ($self->{state} == 3) {
        $self->_denied($self->{status}, $self->{deny_headers}, $self->{deny_body});
    }
    elsif ($self->{state} == 1) {
        # A server closes with 1000, or 1011 after an exception.
        $self->_closed(defined $self->{app_error} ? 1011 : 1000, '');
    }
}

=head2 accepted, status, subprotocol, accept_headers, response

C<accepted> is true once the app sent C<websocket.accept>; C<status> is
then 101. C<subprotocol> and C<accept_headers> are the accept event's.
For a denied session, C<status> is the HTTP status and C<response> a
L<PAGI::Test::Client::Response> with the denial's headers and body.

=cut

sub accepted       { $_[0]{accepted} ? 1 : 0 }
sub status         { $_[0]{status} }
sub subprotocol    { $_[0]{subprotocol} }
sub accept_headers { $_[0]{accept_headers} // [] }
sub response       { $_[0]{response} }
sub scope          { $_[0]{scope} }

sub _denied {
    my ($self, $status, $headers, $body) = @_;
    $self->{state} = 4;
    $self->{status} = $status;
    $self->{response} = PAGI::Test::Client::Response->new(
        status => $status, headers => $headers, body => $body, chunks => [$body]);
}

sub _closed {
    my ($self, $code, $reason) = @_;
    return if $self->{state} == 2;
    $self->{state} = 2;
    @$self{qw(close_code close_reason)} = ($code, $reason);
    $self->{closed_by} //= 'app';
    if (my $f = delete $self->{receive_f}) {
        $f->done({ type => 'websocket.disconnect', code => $code, reason => $reason });
    }
}

sub _receive {
    my ($self) = @_;
    # After a close either way the app hears the close handshake's code.
    return $self->_next_inbound($self->{state} == 2
        ? { type => 'websocket.disconnect', code => $self->{close_code}, reason => $self->{close_reason} } : undef);
}

sub _deliver {
    my ($self, $event) = @_;
    if (my $f = delete $self->{receive_f}) { $f->done($event) }
    else { push @{ $self->{inbox} }, $event }
}

sub _send {
    my ($self, $event) = @_;
    my $problem = $self->_event_problem($event, \%SEND, 'websocket');
    unless (defined $problem) {
        # Closed: a no-op, as PAGI-SPEC 3.2.2 says for a server.
        return Future->done if $self->{state} == 2 || $self->{state} == 4;
        my $method = $SEND{ $event->{type} };
        $problem = $self->$method($event);
    }
    return $self->_answer($problem);
}

sub _accept {
    my ($self, $event) = @_;
    return 'websocket.accept: the handshake was already answered' if $self->{state};
    my $sub = $event->{subprotocol};
    if (defined $sub) {
        return "websocket.accept: 'subprotocol' must be a token" if ref $sub || $sub !~ /\A[\w\-.]+\z/;
        my @offered = @{ $self->{scope}{subprotocols} };
        return "websocket.accept: 'subprotocol' '$sub' was not offered by the client (offered: "
             . (@offered ? join(', ', @offered) : 'none') . ')' unless grep { $_ eq $sub } @offered;
    }
    my $headers = $event->{headers} // [];
    if (my $p = PAGI::Test::Client::Check::headers($headers)) { return "websocket.accept: 'headers' $p" }
    @$self{qw(state accepted status subprotocol)} = (1, 1, 101, $sub);
    $self->{accept_headers} = [ map { [@$_] } @$headers ];
    return undef;
}

sub _message {
    my ($self, $event) = @_;
    my @given = grep { defined $event->{$_} } qw(text bytes);
    return "websocket.send: exactly one of 'text' and 'bytes' is required" unless @given == 1;
    my $p = $given[0] eq 'text' ? PAGI::Test::Client::Check::string($event->{text})
                                : PAGI::Test::Client::Check::bytes($event->{bytes});
    return "websocket.send: '$given[0]' $p" if $p;
    return 'websocket.send: sent before websocket.accept' unless $self->{state} == 1;
    push @{ $self->{outbox} }, { $given[0] => "$event->{$given[0]}" };
    return undef;
}

sub _app_close {
    my ($self, $event) = @_;
    my $code = $event->{code} // 1000;
    my $reason = $event->{reason} // '';
    return "websocket.close: 'code' must be an integer" if ref $code || $code !~ /\A\d+\z/;
    return "websocket.close: 'reason' must be a string" if ref $reason;
    return 'websocket.close: a denial response is in progress' if $self->{state} == 3;
    # Before accept a server refuses the handshake with a bare 403.
    if ($self->{state} == 0) { $self->_denied(403, [], '') }
    else                     { $self->_closed($code + 0, "$reason") }
    return undef;
}

sub _keepalive {
    my ($self, $event) = @_;
    for my $name (qw(interval timeout)) {
        next if $name eq 'timeout' && !defined $event->{$name};
        my $p = PAGI::Test::Client::Check::non_negative_number($event->{$name} // 'missing');
        return "websocket.keepalive: '$name' $p" if $p;
    }
    $self->{keepalive} = { interval => $event->{interval}, timeout => $event->{timeout} };
    return undef;
}

sub _deny_start {
    my ($self, $event) = @_;
    return undef if $self->{state} == 1;    # ignored after accept (PAGI-SPEC 3.2.2)
    return 'websocket.http.response.start: the denial response was already started' if $self->{state} == 3;
    if (my $p = PAGI::Test::Client::Check::status($event->{status})) { return "websocket.http.response.start: 'status' $p" }
    my $headers = $event->{headers} // [];
    if (my $p = PAGI::Test::Client::Check::headers($headers)) { return "websocket.http.response.start: 'headers' $p" }
    @$self{qw(state status deny_headers deny_body)} = (3, $event->{status} + 0, [ map { [@$_] } @$headers ], '');
    return undef;
}

sub _deny_body {
    my ($self, $event) = @_;
    return undef if $self->{state} == 1;
    return 'websocket.http.response.body: sent before websocket.http.response.start' unless $self->{state} == 3;
    my $body = $event->{body} // '';
    if (my $p = PAGI::Test::Client::Check::bytes($body)) { return "websocket.http.response.body: 'body' $p" }
    if (my $p = PAGI::Test::Client::Check::flag($event->{more})) { return "websocket.http.response.body: 'more' $p" }
    $self->{deny_body} .= $body;
    $self->_denied($self->{status}, $self->{deny_headers}, $self->{deny_body}) unless $event->{more};
    return undef;
}

=head2 send_text, send_bytes, send_json

    $ws->send_text("caf\x{e9}");     # characters
    $ws->send_bytes("\x00\x01");     # bytes
    $ws->send_json({ a => 1 });      # a text message

Delivers a C<websocket.receive> event to the app. Croaks when the session
is not open (denied or closed).

=cut

sub _check_open {
    my ($self, $what) = @_;
    $self->_croak("$what: the handshake was denied (status $self->{status})") unless $self->{accepted};
    $self->_croak_app_error;
    $self->_croak("$what: the connection is closed (code $self->{close_code})") if $self->{state} == 2;
}

sub send_text {
    my ($self, $text) = @_;
    $self->_check_open('send_text');
    croak 'send_text: the text must be a defined string' if !defined $text || ref $text;
    $self->_deliver({ type => 'websocket.receive', text => "$text" });
    $self->_croak_problem;
    return $self;
}

sub send_bytes {
    my ($self, $bytes) = @_;
    $self->_check_open('send_bytes');
    croak 'send_bytes: the bytes must be a defined string' if !defined $bytes || ref $bytes;
    croak 'send_bytes: it has characters above 255; encode it first' if utf8::is_utf8($bytes) && $bytes =~ /[^\x00-\xFF]/;
    $self->_deliver({ type => 'websocket.receive', bytes => "$bytes" });
    $self->_croak_problem;
    return $self;
}

sub send_json { $_[0]->send_text(PAGI::Test::Client::JSON->text->encode($_[1])) }

=head2 receive, receive_message, receive_json

    my $data = $ws->receive(timeout => 2);   # text (characters) or bytes
    my $msg  = $ws->receive_message;         # { text => ... } or { bytes => ... }
    my $obj  = $ws->receive_json;

The app's next C<websocket.send>. Waits up to C<timeout> seconds (the
client's by default) and croaks when none comes, or when the app closed
the connection with no message left (the croak names the close code).

=cut

sub receive_message {
    my ($self, %o) = @_;
    my $timeout = $o{timeout} // $self->{timeout};
    my $ready = $self->{client}->_wait(sub { @{ $self->{outbox} } || $self->{state} >= 2 }, $timeout);
    $self->_croak_problem;
    return shift @{ $self->{outbox} } if @{ $self->{outbox} };
    $self->_croak('receive: the handshake was denied (status ' . $self->{status} . ')') if $self->{state} == 4;
    $self->_croak_app_error;
    $self->_croak("receive: no message from the app within ${timeout}s") unless $ready;
    $self->_croak("receive: the connection was closed by the $self->{closed_by} "
        . "(code $self->{close_code}, reason '$self->{close_reason}') with no message left");
}

sub receive {
    my $message = shift->receive_message(@_);
    return defined $message->{text} ? $message->{text} : $message->{bytes};
}

sub receive_json {
    my $self = shift;
    my $message = $self->receive_message(@_);
    my $codec = defined $message->{text} ? PAGI::Test::Client::JSON->text : PAGI::Test::Client::JSON->bytes;
    my $raw = $message->{text} // $message->{bytes};
    my $data = eval { $codec->decode($raw) };
    return $data unless $@;
    (my $why = $@) =~ s/ at \S+ line \d+\.?\n?\z//;
    $self->_croak("receive_json: the message is not JSON: $why; message: '" . substr($raw, 0, 60) . "'");
}

=head2 close

    $ws->close($code, $reason);     # 1000 and '' by default

Delivers C<websocket.disconnect> to the app and waits (up to the
timeout) for the app to return. Croaks if the app died. Closing an
already-closed session only waits for the app.

=head2 closed, close_code, close_reason, wait_closed

C<closed> is true once either side closed; C<close_code> and
C<close_reason> say how (the app's C<websocket.close>, 1000 when it
returned, 1011 when it died). C<wait_closed(timeout =E<gt> $s)> waits for
the app to close and returns the code; it croaks on timeout.

=cut

sub close {
    my ($self, $code, $reason) = @_;
    $code //= 1000;
    $reason //= '';
    if ($self->{state} == 1) {
        $self->{closed_by} = 'client';
        # Closed first, so the app hears this code even if it returns at once;
        # messages it has not read yet still come before the disconnect.
        $self->_closed($code, $reason);
    }
    my $app_f = $self->{app_f};
    my $done = $self->{client}->_wait(sub { $app_f->is_ready }, $self->{timeout});
    $self->_croak_problem;
    $self->_croak_app_error;
    $self->_croak("close: the app did not return within $self->{timeout}s of websocket.disconnect") unless $done;
    return $self;
}

# A session the test dropped while open: the app hears the client leave.
sub DESTROY {
    my ($self) = @_;
    return unless $self->{state} == 1;
    my $f = delete $self->{receive_f} or return;
    $f->done({ type => 'websocket.disconnect', code => 1006, reason => 'client_closed' });
}

sub closed       { $_[0]{state} == 2 || $_[0]{state} == 4 ? 1 : 0 }
sub close_code   { $_[0]{close_code} }
sub close_reason { $_[0]{close_reason} }

sub wait_closed {
    my ($self, %o) = @_;
    my $timeout = $o{timeout} // $self->{timeout};
    my $closed = $self->{client}->_wait(sub { $self->closed }, $timeout);
    $self->_croak_problem;
    $self->_croak("wait_closed: the app did not close within ${timeout}s") unless $closed;
    return $self->{close_code};
}

1;
