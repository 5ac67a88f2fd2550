package PAGI::Test::Client::SSE;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp qw(croak);
use Future;
use Scalar::Util ();
use PAGI::Test::Client::Check;
use PAGI::Test::Client::Response;

use parent -norequire, 'PAGI::Test::Client::Exchange';
use PAGI::Test::Client::Exchange ();

our @CARP_NOT = qw(PAGI::Test::Client);

=head1 NAME

PAGI::Test::Client::SSE - a Server-Sent Events stream from an app, in process

=head1 SYNOPSIS

    my $sse = $client->sse('/feed', last_event_id => '41');
    is $sse->status, 200;
    my $event = $sse->next_event(timeout => 2);
    is $event->{event}, 'tick';
    is $event->{data}, "line 1\nline 2";
    my @comments = $sse->comments;
    $sse->close;

    my $res = $client->sse('/missing');     # the app declined the stream
    isa_ok $res, 'PAGI::Test::Client::Response';
    is $res->status, 404;

=head1 DESCRIPTION

Made by C<< PAGI::Test::Client->sse >>: an C<sse> scope as PAGI::Server
builds for a request with C<Accept: text/event-stream>, the request body
as C<sse.request> events, and C<sse.disconnect> (reason
C<client_closed>) once the test closes the stream. It returns once the
app sent C<sse.start>. When the app declines with
C<sse.http.response.start> / C<sse.http.response.body>,
C<< $client->sse >> returns a L<PAGI::Test::Client::Response> instead.
Events are checked as PAGI::Server checks them (a bad one croaks, naming
the field).

=head1 METHODS

=cut

my %SEND = (
    'sse.start'              => '_start',
    'sse.send'               => '_event',
    'sse.comment'            => '_comment',
    'sse.keepalive'          => '_keepalive',
    'sse.close'              => '_app_close',
    'sse.http.response.start' => '_decline_start',
    'sse.http.response.body'  => '_decline_body',
    'http.fullflush'         => '_fullflush',
);

# state: 0 not started, 1 streaming, 2 ended, 3 decline in progress, 4 declined.
sub new {
    my ($class, %args) = @_;
    my $self = bless { %args, state => 0, events => [], comments => [] }, $class;
    $self->{inbox} = [ { type => 'sse.request', body => delete $self->{body}, more => 0 } ];
    return $self;
}

sub connect {
    my ($self) = @_;
    my $client = $self->{client};
    # Weak: a session the test dropped must not be kept alive by the app's
    # callbacks (nor keep the client, and its lifespan shutdown, alive).
    Scalar::Util::weaken(my $weak = $self);
    $self->{app_f} = $client->_call_app($self->{scope},
        sub { $weak ? $weak->_receive : Future->done({ type => 'sse.disconnect', reason => 'client_closed' }) },
        sub { $weak ? $weak->_send(@_) : Future->done });
    $self->{app_f}->on_ready(sub { $weak->_app_finished if $weak });
    my $answered = $client->_wait(sub { $self->{state} != 0 && $self->{state} != 3 }, $self->{timeout});
    $self->_croak_problem;
    $self->_croak("the app neither started the stream (sse.start) nor declined it within $self->{timeout}s")
        unless $answered;
    $self->_croak_app_error unless $self->{started};
    $self->_croak('the app returned without starting the stream or declining it')
        if $self->{state} == 4 && !$self->{declined} && !defined $self->{app_error} && $client->{raise_app_errors};
    return $self->{response} if $self->{state} == 4;
    return $self;
}

sub _app_finished {
    my ($self) = @_;
    my $f = $self->{app_f};
    $self->{app_error} = ($f->failure)[0] =~ s/\s+\z//r if $f->is_failed;
    if ($self->{state} == 0) {
        my $body = "Internal Server Error\n";
        $self->_declined(500, [ [ 'content-type', 'text/plain' ] ], $body);
    }
    elsif ($self->{state} == 3) {
        $self->_declined(@$self{qw(status decline_headers decline_body)});
    }
    elsif ($self->{state} == 1) {
        $self->{state} = 2;
    }
}

sub _declined {
    my ($self, $status, $headers, $body) = @_;
    $self->{state} = 4;
    $self->{response} = PAGI::Test::Client::Response->new(
        status => $status, headers => $headers, body => $body, chunks => [$body]);
}

=head2 status, headers, header, scope

The C<sse.start> status (200 unless the app gave one) and headers (as
the app sent them: the server's own C<Content-Type> and C<Cache-Control>
are not added).

=cut

sub status  { $_[0]{status} }
sub headers { wantarray ? @{ $_[0]{headers} } : $_[0]{headers} }
sub scope   { $_[0]{scope} }

sub header {
    my ($self, $name) = @_;
    my @v = map { $_->[1] } grep { lc $_->[0] eq lc $name } @{ $self->{headers} };
    return @v ? join(', ', @v) : undef;
}

sub _receive {
    my ($self) = @_;
    my $over = $self->{state} == 2 || $self->{state} == 4;
    return $self->_next_inbound($over ? { type => 'sse.disconnect', reason => $self->{disconnect_reason} // 'x-server-closed' } : undef);
}

sub _send {
    my ($self, $event) = @_;
    my $problem = $self->_event_problem($event, \%SEND, 'sse');
    unless (defined $problem) {
        my $type = $event->{type};
        if ($self->{app_closed}) {
            return Future->done if $type eq 'sse.close';
            $problem = "cannot send '$type' after sse.close";
        }
        elsif ($self->{client_closed}) {
            return Future->done;    # the client is gone: sends are no-ops
        }
        else {
            my $method = $SEND{$type};
            $problem = $self->$method($event);
        }
    }
    return $self->_answer($problem);
}

sub _start {
    my ($self, $event) = @_;
    return 'sse.start: the stream was already started' if $self->{state} == 1;
    return 'sse.start: a decline response (sse.http.response.start) was already sent' if $self->{state} == 3;
    my $status = $event->{status} // 200;
    if (my $p = PAGI::Test::Client::Check::status($status)) { return "sse.start: 'status' $p" }
    my $headers = $event->{headers} // [];
    if (my $p = PAGI::Test::Client::Check::headers($headers)) { return "sse.start: 'headers' $p" }
    @$self{qw(state started status)} = (1, 1, $status + 0);
    $self->{headers} = [ map { [@$_] } @$headers ];
    return undef;
}

sub _streaming {
    my ($self, $type) = @_;
    return "$type: sent before sse.start" if $self->{state} == 0;
    return "$type: sent after a decline response (sse.http.response.start)" if $self->{state} == 3;
    return undef;
}

sub _event {
    my ($self, $event) = @_;
    return "sse.send: 'data' is required" unless defined $event->{data};
    for my $field (qw(data event id)) {
        next unless defined $event->{$field};
        if (my $p = PAGI::Test::Client::Check::string($event->{$field})) { return "sse.send: '$field' $p" }
        return "sse.send: '$field' must not contain CR or LF" if $field ne 'data' && $event->{$field} =~ /[\r\n]/;
    }
    return "sse.send: 'retry' must be a non-negative integer"
        if defined $event->{retry} && (ref $event->{retry} || $event->{retry} !~ /\A\d+\z/);
    if (my $p = $self->_streaming('sse.send')) { return $p }
    # What an EventSource sees: the data lines joined with "\n".
    push @{ $self->{events} }, {
        event => $event->{event}, id => $event->{id}, retry => $event->{retry},
        data  => join("\n", split /\r\n|\r|\n/, $event->{data}, -1),
    };
    return undef;
}

sub _comment {
    my ($self, $event) = @_;
    return "sse.comment: 'comment' is required" unless defined $event->{comment};
    if (my $p = PAGI::Test::Client::Check::string($event->{comment})) { return "sse.comment: 'comment' $p" }
    if (my $p = $self->_streaming('sse.comment')) { return $p }
    push @{ $self->{comments} }, $event->{comment};
    return undef;
}

sub _keepalive {
    my ($self, $event) = @_;
    if (my $p = PAGI::Test::Client::Check::non_negative_number($event->{interval} // 'missing')) {
        return "sse.keepalive: 'interval' $p";
    }
    return "sse.keepalive: 'comment' must be a string" if ref $event->{comment};
    $self->{keepalive} = { interval => $event->{interval}, comment => $event->{comment} // '' };
    return undef;
}

sub _app_close {
    my ($self, $event) = @_;
    return "sse.close: 'reason' must be a string" if ref $event->{reason};
    if (my $p = $self->_streaming('sse.close')) { return $p }
    $self->{app_closed} = 1;
    $self->{close_reason} = $event->{reason};
    $self->{state} = 2;
    # The reason PAGI::Server gives once the stream was ended on its side.
    $self->{disconnect_reason} = 'x-server-closed';
    if (my $f = delete $self->{receive_f}) { $f->done({ type => 'sse.disconnect', reason => 'x-server-closed' }) }
    return undef;
}

sub _decline_start {
    my ($self, $event) = @_;
    return 'sse.http.response.start: the stream was already started' if $self->{state} == 1 || $self->{state} == 2;
    return 'sse.http.response.start: the decline response was already started' if $self->{state} == 3;
    if (my $p = PAGI::Test::Client::Check::status($event->{status})) { return "sse.http.response.start: 'status' $p" }
    my $headers = $event->{headers} // [];
    if (my $p = PAGI::Test::Client::Check::headers($headers)) { return "sse.http.response.start: 'headers' $p" }
    @$self{qw(state status decline_headers decline_body)} = (3, $event->{status} + 0, [ map { [@$_] } @$headers ], '');
    return undef;
}

sub _decline_body {
    my ($self, $event) = @_;
    return 'sse.http.response.body: sent before sse.http.response.start' unless $self->{state} == 3;
    my $body = $event->{body} // '';
    if (my $p = PAGI::Test::Client::Check::bytes($body)) { return "sse.http.response.body: 'body' $p" }
    if (my $p = PAGI::Test::Client::Check::flag($event->{more})) { return "sse.http.response.body: 'more' $p" }
    $self->{decline_body} .= $body;
    unless ($event->{more}) {
        $self->{declined} = 1;
        $self->_declined(@$self{qw(status decline_headers decline_body)});
    }
    return undef;
}

sub _fullflush {
    my ($self) = @_;
    return $self->{scope}{extensions}{fullflush} ? undef
         : 'http.fullflush: the fullflush extension is not advertised in this scope';
}

=head2 next_event

    my $event = $sse->next_event(timeout => 2);
    # { event => 'tick' or undef, data => "...", id => ... or undef, retry => ... or undef }

The next C<sse.send>, with C<data> as an EventSource sees it (lines
joined with C<"\n">). Returns C<undef> once the app ended the stream and
every event was read; croaks when none comes within C<timeout> seconds
(the client's by default) or the app died.

=head2 events

Every event not yet taken by C<next_event>, without waiting.

=head2 comments

Every C<sse.comment> text received so far, in order.

=head2 keepalive

The last C<sse.keepalive> settings (C<{ interval, comment }>), or undef.

=cut

sub next_event {
    my ($self, %o) = @_;
    my $timeout = $o{timeout} // $self->{timeout};
    my $ready = $self->{client}->_wait(sub { @{ $self->{events} } || $self->{state} == 2 }, $timeout);
    $self->_croak_problem;
    return shift @{ $self->{events} } if @{ $self->{events} };
    $self->_croak_app_error;
    $self->_croak("next_event: no event from the app within ${timeout}s") unless $ready;
    return undef;
}

sub events { my $self = shift; return splice @{ $self->{events} } }

sub comments { @{ $_[0]{comments} } }

sub keepalive { $_[0]{keepalive} }

=head2 close

Delivers C<sse.disconnect> (reason C<client_closed>) to the app and waits
(up to the timeout) for the app to return. Croaks if the app died.

=head2 closed

True once the stream ended (the app sent C<sse.close> or returned, or
the test closed it).

=cut

sub close {
    my ($self) = @_;
    if ($self->{state} == 1) {
        $self->{client_closed} = 1;
        $self->{state} = 2;
        $self->{disconnect_reason} = 'client_closed';
        if (my $f = delete $self->{receive_f}) { $f->done({ type => 'sse.disconnect', reason => 'client_closed' }) }
    }
    my $app_f = $self->{app_f};
    my $done = $self->{client}->_wait(sub { $app_f->is_ready }, $self->{timeout});
    $self->_croak_problem;
    $self->_croak_app_error;
    $self->_croak("close: the app did not return within $self->{timeout}s of sse.disconnect") unless $done;
    return $self;
}

# A stream the test dropped while open: the app hears the client leave.
sub DESTROY {
    my ($self) = @_;
    return unless $self->{state} == 1;
    my $f = delete $self->{receive_f} or return;
    $f->done({ type => 'sse.disconnect', reason => 'client_closed' });
}

sub closed { $_[0]{state} == 2 ? 1 : 0 }

1;
