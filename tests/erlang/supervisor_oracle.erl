%% The reference side of tests/test_supervisor_differential.py: Erlang/OTP's own supervisor
%% runs the scenarios the Python driver writes to stdin, one per line, and prints what it
%% observed, one line per step, then "end". One VM serves every scenario.
%%
%% A scenario is an Erlang term:
%%   {scenario, Strategy, MaxRestarts, [{ChildId, RestartType}], [Step]}
%% Step is one of
%%   {exit, Id, ReasonClass}                  the running child Id stops itself
%%   {exit_many, HoldId, [{Id, ReasonClass}]} while the supervisor is held inside a
%%                                            terminate_child(HoldId), those children stop
%%                                            themselves, so their exits queue up together
%%   {start_child, Id, RestartType} | {terminate_child, Id} | {restart_child, Id}
%%   | {delete_child, Id}
%% ReasonClass: normal | shutdown | shutdown_tuple | abnormal.
%%
%% Every line is "Label Result | Events | Children | Counts", or "Label Result | Events |
%% exit:Reason" once the supervisor has exited (the last line, "stop", is the supervisor
%% stopped after the last step); Events are "started:Id" / "ended:Id" in the order the
%% children saw them; Children is which_children as OTP orders it (newest first). The children are gen_servers that trap exits, so each one's
%% terminate/2 reports its own end before it exits; observation is synchronous (no sleeps).
%%
%% This module is test code: it never touches anything outside its own VM.
-module(supervisor_oracle).
-export([main/0, start_worker/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(PERIOD_SECONDS, 3600).

main() ->
    logger:set_primary_config(level, none),
    process_flag(trap_exit, true),
    loop().

loop() ->
    case io:get_line("") of
        eof ->
            halt(0);
        {error, Error} ->
            io:format(standard_error, "supervisor_oracle: reading stdin: ~p~n", [Error]),
            halt(1);
        Line ->
            {ok, Tokens, _} = erl_scan:string(Line),
            {ok, Scenario} = erl_parse:parse_term(Tokens),
            run(Scenario),
            io:put_chars("end\n"),
            loop()
    end.

%% -- one scenario -------------------------------------------------------------------------

run({scenario, Strategy, MaxRestarts, Children, Steps}) ->
    Specs = [child_spec(Id, Restart) || {Id, Restart} <- Children],
    {ok, Sup} = supervisor:start_link(?MODULE, {supervisor, Strategy, MaxRestarts, Specs}),
    Monitor = erlang:monitor(process, Sup),
    case observe(Sup, Monitor, "start", "ok") of
        alive -> run_steps(Steps, 1, Sup, Monitor);
        exited -> ok
    end,
    receive {'EXIT', Sup, _} -> ok end,
    flush().

run_steps([], _, Sup, Monitor) ->
    gen_server:stop(Sup),
    receive {'DOWN', Monitor, process, Sup, Reason} -> ok end,
    emit("stop ok | " ++ events() ++ " | exit:" ++ term(Reason));
run_steps([Step | Steps], Number, Sup, Monitor) ->
    Result = step(Step, Sup),
    case observe(Sup, Monitor, integer_to_list(Number), Result) of
        alive -> run_steps(Steps, Number + 1, Sup, Monitor);
        exited -> ok
    end.

flush() ->
    receive _ -> flush() after 0 -> ok end.

child_spec(Id, Restart) ->
    #{id => Id, start => {?MODULE, start_worker, [Id, self()]}, restart => Restart,
      shutdown => infinity, type => worker}.

%% -- steps --------------------------------------------------------------------------------

step({exit, Id, Class}, Sup) ->
    case running(Sup, Id) of
        undefined -> "not_running";
        Pid -> stop_worker(Pid, Class), wait_handled(Sup, [{Id, Pid}]), "ok"
    end;
step({exit_many, HoldId, Exits}, Sup) ->
    case running(Sup, HoldId) of
        undefined ->
            "not_running";
        Holder ->
            Running = [{Id, Pid} || {Id, Pid, _, _} <- supervisor:which_children(Sup), is_pid(Pid)],
            ok = gen_server:call(Holder, hold),
            Self = self(),
            spawn_link(fun() -> Self ! {terminated, supervisor:terminate_child(Sup, HoldId)} end),
            receive {holding, HoldId} -> ok end,
            Results = [exit_while_held(Id, Class, HoldId, Running) || {Id, Class} <- Exits],
            Holder ! release,
            receive {terminated, ok} -> ok end,
            wait_handled(Sup, [Stopped || {stopped, Stopped} <- Results]),
            string:join([atom_to_list(Outcome) || Outcome <- [outcome(R) || R <- Results]], ",")
    end;
step({start_child, Id, Restart}, Sup) ->
    result(supervisor:start_child(Sup, child_spec(Id, Restart)));
step({terminate_child, Id}, Sup) ->
    result(supervisor:terminate_child(Sup, Id));
step({restart_child, Id}, Sup) ->
    result(supervisor:restart_child(Sup, Id));
step({delete_child, Id}, Sup) ->
    result(supervisor:delete_child(Sup, Id)).

exit_while_held(HoldId, _, HoldId, _) ->
    not_running;
exit_while_held(Id, Class, _, Running) ->
    case lists:keyfind(Id, 1, Running) of
        {Id, Pid} -> stop_worker(Pid, Class), {stopped, {Id, Pid}};
        false -> not_running
    end.

outcome({stopped, _}) -> ok;
outcome(not_running) -> not_running.

result(ok) -> "ok";
result({ok, _Pid}) -> "ok";
result({error, {already_started, _Pid}}) -> "error:already_started";
result({error, Reason}) when is_atom(Reason) -> "error:" ++ atom_to_list(Reason).

running(Sup, Id) ->
    case lists:keyfind(Id, 1, supervisor:which_children(Sup)) of
        {Id, Pid, _, _} when is_pid(Pid) -> Pid;
        _ -> undefined
    end.

%% A worker stops itself with the reason of its class; returns once it is gone.
stop_worker(Pid, Class) ->
    Monitor = erlang:monitor(process, Pid),
    gen_server:cast(Pid, {stop, reason(Class)}),
    receive {'DOWN', Monitor, process, Pid, _} -> ok end.

reason(normal) -> normal;
reason(shutdown) -> shutdown;
reason(shutdown_tuple) -> {shutdown, planned};
reason(abnormal) -> {crash, planned}.

%% Returns once the supervisor has handled the exit of every {Id, Pid} (no child Id has that
%% pid any more), or has exited itself. A which_children call is handled between two
%% messages, so what it shows is never half a restart.
wait_handled(_, []) ->
    ok;
wait_handled(Sup, Exited) ->
    case catch supervisor:which_children(Sup) of
        Children when is_list(Children) ->
            case [Pid || {Id, Pid} <- Exited, lists:keyfind(Id, 1, Children) =:= {Id, Pid, worker, [?MODULE]}] of
                [] -> ok;
                _ -> erlang:yield(), wait_handled(Sup, Exited)
            end;
        _ ->
            ok
    end.

%% -- observation ------------------------------------------------------------------------

observe(Sup, Monitor, Label, Result) ->
    Observed = (catch {supervisor:which_children(Sup), supervisor:count_children(Sup)}),
    case Observed of
        {Children, Counts} when is_list(Children) ->
            emit(Label ++ " " ++ Result ++ " | " ++ events() ++ " | " ++ children(Children) ++ " | " ++ counts(Counts)),
            alive;
        _ ->
            receive
                {'DOWN', Monitor, process, Sup, Reason} ->
                    emit(Label ++ " " ++ Result ++ " | " ++ events() ++ " | exit:" ++ term(Reason)),
                    exited
            end
    end.

events() ->
    string:join(collect_events(), " ").

collect_events() ->
    receive {event, Kind, Id} -> [atom_to_list(Kind) ++ ":" ++ atom_to_list(Id) | collect_events()]
    after 0 -> []
    end.

children(Children) ->
    string:join([atom_to_list(Id) ++ "=" ++ running_flag(Pid) || {Id, Pid, _, _} <- Children], " ").

running_flag(Pid) when is_pid(Pid) -> "1";
running_flag(_) -> "0".

counts(Counts) ->
    string:join([integer_to_list(proplists:get_value(Key, Counts)) || Key <- [specs, active, supervisors, workers]], ",").

term(Reason) ->
    lists:flatten(io_lib:format("~w", [Reason])).

emit(Line) ->
    io:put_chars([Line, $\n]).

%% -- the supervisor's callback and the workers (gen_servers) -------------------------------

start_worker(Id, Observer) ->
    gen_server:start_link(?MODULE, {worker, Id, Observer}, []).

init({supervisor, Strategy, MaxRestarts, Specs}) ->
    {ok, {#{strategy => Strategy, intensity => MaxRestarts, period => ?PERIOD_SECONDS}, Specs}};
init({worker, Id, Observer}) ->
    process_flag(trap_exit, true),
    Observer ! {event, started, Id},
    {ok, #{id => Id, observer => Observer, held => false}}.

handle_call(hold, _From, Worker) ->
    {reply, ok, Worker#{held := true}}.

handle_cast({stop, Reason}, Worker) ->
    {stop, Reason, Worker}.

handle_info(_Message, Worker) ->
    {noreply, Worker}.

%% Held, a worker asked to shut down keeps its supervisor waiting until released.
terminate(_Reason, #{id := Id, observer := Observer, held := Held}) ->
    case Held of
        true -> Observer ! {holding, Id}, receive release -> ok end;
        false -> ok
    end,
    Observer ! {event, ended, Id}.
